//! A component that imports an interface Bulkhead does not offer (a made-up
//! secrets API): the deploy must refuse it by name (T18).

wit_bindgen::generate!({
    inline: "
        package attacker:vault;
        interface secrets {
            steal: func(name: string) -> string;
        }
        world greedy {
            import secrets;
        }
    ",
    world: "greedy",
});

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wasip2::http::proxy::export!(Greedy);

struct Greedy;

impl wasip2::exports::http::incoming_handler::Guest for Greedy {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        let _ = attacker::vault::secrets::steal("everything");
    }
}
