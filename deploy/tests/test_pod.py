"""deploy/ (issue 16): the pod, run on this machine as the cluster would.

No Kubernetes runs here, so this test plays the kubelet's part with the real
`bulkhead` binary, taking every command from deploy/kubernetes/ itself:

- the volumes are laid out as the kubelet lays them, under a temporary root
  (the pod's absolute paths moved under it): the Secret and TLS volumes
  root's and group-readable (0440, group = fsGroup), the ConfigMap as
  symlinks into `..data`, the emptyDirs root's and 2777;
- the init container's script runs, as the pod's user (65532, with fsGroup
  as a supplementary group) when this runs as root;
- then the server's arguments, in `prod` with every strict rule: the
  ConfigMap's manifest signed and locked, TLS on the pod port, the master
  key from the in-memory copy, Redis for the shared limits;
- the startup, readiness and liveness probes' own commands must succeed;
  a request over TLS is answered; SIGTERM stops it within the grace period.

Needs the binary (`cargo build -p bulkhead-cli`, or BULKHEAD_BIN),
examples/hello/build/hello-rust.wasm (examples/hello/build.sh), openssl,
curl, and Redis on 127.0.0.1:6379 (it uses database 13).
"""

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploy_common as common  # noqa: E402

POD_USER = 65532
REDIS_URL = "redis://127.0.0.1:6379/13"
POD_PATHS = ("/var/lib/bulkhead", "/run/bulkhead", "/etc/bulkhead", "/opt/bulkhead")


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def one(objects, kind):
    found = [o for o in objects if o.get("kind") == kind]
    assert len(found) == 1, kind
    return found[0]


class PodOnThisMachine(unittest.TestCase):
    def setUp(self):
        binary = os.environ.get("BULKHEAD_BIN") or str(common.ROOT / "target" / "debug" / "bulkhead")
        self.assertTrue(Path(binary).is_file(), f"{binary} is missing: cargo build -p bulkhead-cli")
        self.component = common.ROOT / "examples" / "hello" / "build" / "hello-rust.wasm"
        self.assertTrue(self.component.is_file(), f"{self.component} is missing: examples/hello/build.sh")
        self.root = Path(tempfile.mkdtemp(prefix="bulkhead-pod-"))
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        os.chmod(self.root, 0o755)
        bin_dir = self.root / "usr-local-bin"
        bin_dir.mkdir(mode=0o755)
        self.bulkhead = bin_dir / "bulkhead"
        shutil.copy(binary, self.bulkhead)
        os.chmod(self.bulkhead, 0o755)
        self.as_root = os.geteuid() == 0
        objects = common.plain()
        self.deployment = one(objects, "Deployment")
        self.configmap = one(objects, "ConfigMap")
        spec = self.deployment["spec"]["template"]["spec"]
        self.init = spec["initContainers"][0]
        self.server = spec["containers"][0]
        self.group = spec["securityContext"]["fsGroup"]

    # --- the kubelet's part -------------------------------------------------

    def moved(self, text):
        """`text` with the pod's absolute paths under the temporary root."""
        for path in POD_PATHS:
            text = text.replace(path, f"{self.root}{path}")
        return text

    def owned(self, path, mode):
        """As the kubelet leaves it: root's, group fsGroup, `mode`."""
        if self.as_root:
            os.chown(path, 0, self.group)
        os.chmod(path, mode)

    def run_as_pod(self, argv, **kwargs):
        """argv as the pod's user, with fsGroup as its supplementary group."""
        if self.as_root:
            argv = ["setpriv", f"--reuid={POD_USER}", f"--regid={POD_USER}",
                    f"--groups={self.group}", "--inh-caps=-all", "--no-new-privs", "--"] + argv
        env = {
            "PATH": f"{self.bulkhead.parent}:/usr/bin:/bin",
            "HOME": "/nonexistent",
            "BULKHEAD_LOG": "info",
        }
        for var in self.init.get("env", []) + self.server.get("env", []):
            env[var["name"]] = self.moved(var["value"])
        return argv, env, kwargs

    def volume_dir(self, path, mode):
        path.mkdir(parents=True, exist_ok=True)
        self.owned(path, mode)
        return path

    def lay_out_volumes(self, signed):
        """The image's app, the ConfigMap, the Secrets and the emptyDirs."""
        r = self.root
        for d in ("opt", "opt/bulkhead", "etc", "etc/bulkhead", "var", "var/lib", "run"):
            (r / d).mkdir(mode=0o755, exist_ok=True)
        # The image: components, signatures, the signers' keys; root's, a=rX.
        image_app = r / "opt/bulkhead/app"
        shutil.copytree(signed, image_app, ignore=shutil.ignore_patterns("bulkhead.*", "tls", ".bulkhead"))
        for p in [image_app, *image_app.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        # The ConfigMap: files behind ..data symlinks, as the kubelet writes them.
        cm = self.volume_dir(r / "etc/bulkhead/app", 0o777)
        data = cm / "..2026_12_04_00_00_00.000000000"
        data.mkdir(mode=0o755)
        for name in sorted(p.name for p in signed.glob("bulkhead.*")):
            shutil.copy(signed / name, data / name)
            os.chmod(data / name, 0o644)
        (cm / "..data").symlink_to(data.name)
        for name in sorted(p.name for p in signed.glob("bulkhead.*")):
            (cm / name).symlink_to(f"..data/{name}")
        # The Secrets, mode 0440 (defaultMode), group fsGroup.
        for volume, files in (("tls", {"tls.crt": signed / "tls" / "tls.crt", "tls.key": signed / "tls" / "tls.key"}),
                              ("secrets", {"master.key": self.root / "master.key", "redis-url": self.root / "redis-url"})):
            d = self.volume_dir(r / "etc/bulkhead" / volume, 0o755)
            for name, source in files.items():
                shutil.copy(source, d / name)
                self.owned(d / name, 0o440)
        # The emptyDirs: root's, group fsGroup, 2777.
        for d in ("var/lib/bulkhead", "run/bulkhead", "tmp-volume"):
            self.volume_dir(r / d, 0o2777)

    # --- the app, signed and locked as a release would be -------------------

    def signed_app(self):
        app = self.root / "release"
        (app / "build").mkdir(parents=True)
        (app / "keys").mkdir()
        (app / "tls").mkdir()
        shutil.copy(self.component, app / "build" / "hello-rust.wasm")
        manifest = self.moved(self.configmap["data"]["bulkhead.toml"])
        (app / "bulkhead.toml").write_text(manifest)
        # A certificate of the cluster's own CA would do; a self-signed one
        # that is not `bulkhead tls self-signed`'s development certificate.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=bulkhead.bulkhead.svc",
             "-addext", "subjectAltName=DNS:bulkhead.bulkhead.svc,IP:127.0.0.1",
             "-keyout", str(app / "tls" / "tls.key"), "-out", str(app / "tls" / "tls.crt")],
            check=True, capture_output=True,
        )
        os.chmod(app / "tls" / "tls.key", 0o600)
        (self.root / "master.key").write_bytes(os.urandom(32))
        os.chmod(self.root / "master.key", 0o600)
        (self.root / "redis-url").write_text(REDIS_URL + "\n")
        key = self.root / "signing" / "release"
        key.parent.mkdir(mode=0o700)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root),
               "BULKHEAD_MASTER_KEY_FILE": str(self.root / "master.key")}

        def bulkhead(*argv):
            result = subprocess.run([str(self.bulkhead), *argv], capture_output=True, text=True, env=env)
            self.assertEqual(result.returncode, 0, f"bulkhead {argv[0]}: {result.stdout}{result.stderr}")

        bulkhead("keygen", "--output", str(key), "--unencrypted")
        shutil.copy(f"{key}.pub", app / "keys" / "release.pub")
        bulkhead("lock", str(app), "--env", "prod")
        bulkhead("sign", str(app), "--env", "prod", "--key", f"{key}.key")
        # Every strict rule but the admin token, which the pod makes.
        bulkhead("check", str(app), "--env", "prod")
        return app

    # --- the pod --------------------------------------------------------------

    def run_init_container(self):
        app = self.signed_app()
        self.lay_out_volumes(app)
        self.assertEqual(self.init["command"][:2], ["/bin/sh", "-ec"])
        script = self.moved(self.init["command"][2])
        argv, env, _ = self.run_as_pod(["/bin/sh", "-ec", script])
        result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=self.root, timeout=120)
        self.assertEqual(result.returncode, 0, f"init container: {result.stdout}{result.stderr}")
        return app

    def test_t15_without_the_owner_only_copy_prod_refuses_the_secret_volume_key(self):
        """Why the init container copies: the Secret volume's key (0440,
        group fsGroup) is refused by strict `prod` before anything serves."""
        self.run_init_container()
        args = [self.moved(a) for a in self.server["args"]]
        args[args.index("--listen") + 1] = "127.0.0.1:0"
        args[args.index("--admin-listen") + 1] = "127.0.0.1:0"
        argv, env, _ = self.run_as_pod([str(self.bulkhead), *args])
        env["BULKHEAD_MASTER_KEY_FILE"] = str(self.root / "etc/bulkhead/secrets/master.key")
        result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=self.root, timeout=120)
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertIn("readable or writable by group or others (mode 440)", result.stderr)

    def test_the_pod_starts_serves_probes_and_drains_as_its_user(self):
        app = self.run_init_container()
        authorization = self.root / "run/bulkhead/admin/authorization"
        master = self.root / "run/bulkhead/secrets/master.key"
        tls_key = self.root / "var/lib/bulkhead/app/tls/tls.key"
        # Owner-only: umask 077 over the Secret's 0440 leaves 0400.
        for path in (authorization, master, tls_key):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o077, 0, path)
        if self.as_root:
            for path in (authorization, master, tls_key):
                self.assertEqual(path.stat().st_uid, POD_USER, path)
        self.assertTrue(authorization.read_text().startswith("Authorization: Bearer "))

        # The server, with the Deployment's own arguments. Other tests bind
        # ports too: a port taken between the pick and the bind is picked
        # again (at most three times).
        log = open(self.root / "server.log", "w+")
        self.addCleanup(log.close)
        for attempt in range(3):
            port, admin = free_port("0.0.0.0"), free_port()
            args = [self.moved(a) for a in self.server["args"]]
            listen, admin_listen = args.index("--listen") + 1, args.index("--admin-listen") + 1
            self.assertTrue(args[listen].startswith("0.0.0.0:"), args)
            args[listen] = args[listen].replace(":8443", f":{port}")
            args[admin_listen] = args[admin_listen].replace(":9901", f":{admin}")
            argv, env, _ = self.run_as_pod([str(self.bulkhead), *args])
            log.seek(0)
            log.truncate()
            server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
            try:
                server.wait(timeout=2)
            except subprocess.TimeoutExpired:
                break  # still running: listening
            log.flush()
            if "Address already in use" not in (self.root / "server.log").read_text() or attempt == 2:
                break

        def stop():
            if server.poll() is None:
                server.kill()
                server.wait()

        self.addCleanup(stop)

        def probe(name):
            command = self.server[name]["exec"]["command"]
            command = [self.moved(c).replace(":9901/", f":{admin}/") for c in command]
            argv, env, _ = self.run_as_pod(command)
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)

        def server_log():
            log.flush()
            return (self.root / "server.log").read_text()[-4000:]

        startup = self.server["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while True:
            self.assertIsNone(server.poll(), f"the server exited: {server_log()}")
            if probe("startupProbe").returncode == 0:
                break
            self.assertLess(time.monotonic(), deadline, f"the startup probe never passed: {server_log()}")
            time.sleep(startup["periodSeconds"])
        if self.as_root:
            status = Path(f"/proc/{server.pid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            self.assertEqual(set(uids), {str(POD_USER)}, "the server does not run as the pod's user")
            self.assertIn("NoNewPrivs:\t1", status)
            self.assertRegex(status, r"CapEff:\s+0+\n", "the server holds capabilities")
        for name in ("readinessProbe", "livenessProbe"):
            result = probe(name)
            self.assertEqual(result.returncode, 0, f"{name}: {result.stderr}")
        # Without the pod's token the admin listener refuses (T17).
        bare = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               f"http://127.0.0.1:{admin}/readyz"], capture_output=True, text=True)
        self.assertEqual(bare.stdout, "401")
        # The gateway answers over TLS on the pod port.
        answer = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(app / "tls" / "tls.crt"),
             "--resolve", f"bulkhead.bulkhead.svc:{port}:127.0.0.1",
             f"https://bulkhead.bulkhead.svc:{port}/hello", "-w", "\n%{http_code}"],
            capture_output=True, text=True,
        )
        self.assertTrue(answer.stdout.endswith("\n200"), f"{answer.stdout}{answer.stderr}{server_log()}")
        # Plain HTTP is not served on the pod port.
        plain = subprocess.run(["curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/hello"], capture_output=True, text=True)
        self.assertNotEqual(plain.stdout, "200")
        # SIGTERM (after preStop) drains and exits within the grace period.
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=self.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        self.assertEqual(code, 0, server_log())


if __name__ == "__main__":
    unittest.main()
