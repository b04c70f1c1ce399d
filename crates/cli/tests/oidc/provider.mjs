// A real OpenID Connect provider on loopback for the sign-in tests
// (issue 15): oidc-provider (OpenID-certified), over plain http on
// 127.0.0.1. Started by crates/cli/tests/login.rs with node; prints one JSON
// line {"issuer": "http://127.0.0.1:PORT"} once it listens.
//
// Its only test-specific part is the interaction: instead of a login form
// it signs in OIDC_SUBJECT and grants what is asked at once, so an HTTP
// client that follows redirects completes the flow.
//
// Environment:
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI  the one client
//   OIDC_SUBJECT    the account that signs in
//   OIDC_BAD_NONCE  "1": the token endpoint's ID token carries another
//                   nonce, signed with the provider's own key (a provider
//                   variant that a client must refuse)
import http from 'node:http';
import { generateKeyPair, exportJWK, SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
};
const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUri = env('OIDC_REDIRECT_URI');
const subject = env('OIDC_SUBJECT');
const badNonce = process.env.OIDC_BAD_NONCE === '1';

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'test-key', alg: 'RS256', use: 'sig' };

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  jwks: { keys: [jwk] },
  claims: { openid: ['sub'] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  cookies: { keys: ['test-cookie-key'] },
});

provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (match && ctx.method === 'GET') {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session, grantId } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: subject } };
    } else {
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      if (prompt.details.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
      }
      result = { consent: { grantId: await grant.save() } };
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.redirect(to);
    return;
  }
  await next();
  if (badNonce && ctx.path === '/token' && ctx.status === 200) {
    const body = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : ctx.body;
    if (body && body.id_token) {
      const claims = decodeJwt(body.id_token);
      const header = decodeProtectedHeader(body.id_token);
      claims.nonce = 'not-the-nonce-the-client-sent';
      body.id_token = await new SignJWT(claims).setProtectedHeader(header).sign(privateKey);
      ctx.body = body;
    }
  }
});

server.on('request', provider.callback());
console.log(JSON.stringify({ issuer }));
