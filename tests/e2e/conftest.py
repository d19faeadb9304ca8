"""Fixtures that run the real `weir` binary (WEIR_BIN, default target/debug/weir) as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from util import REPO_ROOT, TIMINGS, free_port, port_open  # noqa: E402

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for name, text in TIMINGS:
            terminalreporter.write_line(f"{name}: {text}")


def weir_bin() -> Path:
    p = Path(os.environ.get("WEIR_BIN", REPO_ROOT / "target" / "debug" / "weir"))
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(f"weir binary not found at {p}: build it (cargo build -p weir-broker --bin weir) "
                    f"or point WEIR_BIN at it; ./tests/run.sh does both", pytrace=False)
    return p


class Broker:
    """One `weir serve` process. Ports and data dir survive restart()."""

    def __init__(self, workdir: Path, extra_args=(), advertised_kafka: str | None = None,
                 kafka_port: int | None = None, http_port: int | None = None):
        self.bin = weir_bin()
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.kafka_port = kafka_port or free_port()
        self.http_port = http_port or free_port()
        self.extra_args = list(extra_args)
        self.advertised_kafka = advertised_kafka
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- addresses
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def args(self) -> list[str]:
        a = [str(self.bin), "serve", "--data-dir", str(self.data_dir),
             "--kafka-listen", f"127.0.0.1:{self.kafka_port}",
             "--http-listen", f"127.0.0.1:{self.http_port}"]
        if self.advertised_kafka:
            a += ["--advertised-kafka", self.advertised_kafka]
        return a + self.extra_args

    # -- lifecycle
    def start(self, wait: bool = True) -> "Broker":
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== start #{self.starts}: {' '.join(self.args())}\n".encode())
            logf.flush()
            env = dict(os.environ)
            env.setdefault("RUST_BACKTRACE", "1")
            self.proc = subprocess.Popen(self.args(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=env,
                                         start_new_session=True)
        if wait:
            self._wait_ready()
        return self

    def wait_ready(self) -> None:
        self._wait_ready()

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=1) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"weir exited with code {rc} during startup\n{self.log_tail()}")
            if port_open("127.0.0.1", self.kafka_port) and self._health_ok():
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(10)
        raise AssertionError(f"weir did not accept Kafka connections on {self.bootstrap} and answer "
                             f"GET {self.http_url}/health with 200 within {START_TIMEOUT}s\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send sig and wait for exit. Returns the exit code (negative = killed by signal)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"weir did not exit within {timeout}s of signal {sig}\n{self.log_tail()}")

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM, wait: bool = True) -> "Broker":
        rc = self.stop(sig)
        if sig == signal.SIGTERM:
            assert rc == 0, f"weir exited with {rc} after SIGTERM (clean shutdown expected)\n{self.log_tail()}"
        return self.start(wait)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- diagnostics
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_text().splitlines()[-n:]
        return f"--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)

    def assert_no_panic(self) -> None:
        text = self.log_text()
        if "panicked at" in text:
            i = text.index("panicked at")
            raise AssertionError(f"weir panicked (log {self.log_path}):\n{text[max(0, i - 2000): i + 3000]}")


class BrokerFactory:
    def __init__(self, base: Path):
        self.base = base
        self.brokers: list[Broker] = []

    def __call__(self, extra_args=(), advertised_kafka=None, kafka_port=None, start=True) -> Broker:
        b = Broker(self.base / f"broker{len(self.brokers)}", extra_args=extra_args,
                   advertised_kafka=advertised_kafka, kafka_port=kafka_port)
        self.brokers.append(b)
        if start:
            b.start()
        return b

    def close(self) -> None:
        errors = []
        for b in self.brokers:
            try:
                b.stop()
            except AssertionError as e:
                errors.append(str(e))
            try:
                b.assert_no_panic()
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def broker_factory(tmp_path):
    """Function-scoped: make brokers with custom args; all stopped and checked for panics at teardown."""
    f = BrokerFactory(tmp_path)
    yield f
    f.close()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A fresh broker of its own, for tests that stop/restart it."""
    return broker_factory()


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory) -> Broker:
    """One broker shared by all tests that neither restart it nor need special settings."""
    f = BrokerFactory(tmp_path_factory.mktemp("shared"))
    b = f()
    yield b
    f.close()


@pytest.fixture
def bootstrap(request) -> str:
    """Bootstrap address of the shared broker.

    WEIR_E2E_EXTERNAL_BOOTSTRAP=host:port points the shared-broker tests at an already running
    Kafka-compatible broker instead (to check the tests themselves against another implementation)."""
    ext = os.environ.get("WEIR_E2E_EXTERNAL_BOOTSTRAP")
    if ext:
        return ext
    shared_broker = request.getfixturevalue("shared_broker")
    assert shared_broker.running, f"the shared broker is no longer running\n{shared_broker.log_tail()}"
    return shared_broker.bootstrap


def pytest_report_header(config):
    return f"weir binary: {os.environ.get('WEIR_BIN', REPO_ROOT / 'target' / 'debug' / 'weir')}"


def dump_json(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
