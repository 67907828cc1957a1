import pytest


@pytest.mark.ray
def test_shared_cluster_runs_tasks(ray_cluster):
    import ray

    @ray.remote(num_cpus=0.5)
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] == 2


@pytest.mark.ray
def test_init_is_idempotent(ray_cluster):
    from lungsearch.runtime import init_ray

    init_ray()  # attaches to the running one, starts nothing new
    import ray

    assert ray.is_initialized()


# ---------------------------------------------------------------- start-up retry (no Ray started)


class _FakeRay:
    """Stands in for the ``ray`` module: ``init`` fails with the given errors, then succeeds."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = []
        self.shutdowns = 0

    def is_initialized(self):
        return False

    def init(self, **opts):
        import os

        self.calls.append((dict(opts), os.environ.get("RAY_gcs_server_port_wait_time_s")))
        if self.errors:
            raise self.errors.pop(0)
        return "ctx"

    def shutdown(self, wait_for_processes=False):
        assert wait_for_processes
        self.shutdowns += 1


@pytest.fixture
def fake_ray(monkeypatch):
    import sys

    from lungsearch import runtime

    def make(errors):
        fake = _FakeRay(errors)
        monkeypatch.setitem(sys.modules, "ray", fake)
        monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
        monkeypatch.setattr(runtime.atexit, "register", lambda fn: None)
        monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
        return fake

    return make


@pytest.mark.parametrize(
    "message",
    [
        "The current node timed out during startup. This could happen because some of the raylet failed to startup",
        "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_abc",
    ],
)
def test_a_startup_timeout_is_retried_once_on_a_clean_folder(fake_ray, message, caplog):
    import os

    from lungsearch.runtime import init_ray

    fake = fake_ray([RuntimeError(message)])
    with caplog.at_level("WARNING", logger="lungsearch.runtime"):
        assert init_ray(address="", num_cpus=2) == "ctx"
    (first, wait1), (second, wait2) = fake.calls
    assert "_temp_dir" not in first and first["include_dashboard"] is False  # Ray's own folder first, no dashboard
    assert os.path.basename(second["_temp_dir"]).startswith("ray-ls-") and os.path.isdir(second["_temp_dir"])
    assert wait1 is None and int(wait2) > 30  # a longer GCS wait on the retry only
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ
    assert fake.shutdowns == 1
    assert [r.message for r in caplog.records if "retrying once" in r.message] != []
    os.rmdir(second["_temp_dir"])


def test_a_second_timeout_raises_and_leaves_no_folder(fake_ray):
    import os

    from lungsearch.runtime import init_ray

    fake = fake_ray(
        [Exception("The current node timed out during startup."), Exception("Timed out waiting for file x")]
    )
    with pytest.raises(Exception, match="Timed out waiting for file"):
        init_ray(address="", num_cpus=2)
    assert len(fake.calls) == 2 and fake.shutdowns == 2
    assert not os.path.exists(fake.calls[1][0]["_temp_dir"])


def test_any_other_failure_raises_at_once(fake_ray):
    from lungsearch.runtime import init_ray

    fake = fake_ray([ValueError("num_cpus must be positive")])
    with pytest.raises(ValueError, match="num_cpus"):
        init_ray(address="", num_cpus=2)
    assert len(fake.calls) == 1


def test_attaching_is_not_retried(fake_ray):
    from lungsearch.runtime import init_ray

    fake = fake_ray([Exception("The current node timed out during startup.")])
    with pytest.raises(Exception, match="timed out"):
        init_ray(address="127.0.0.1:6379")
    assert len(fake.calls) == 1 and fake.calls[0][0]["address"] == "127.0.0.1:6379"


_START_STOP = """
import time
from lungsearch.runtime import init_ray, shutdown_ray
t = time.perf_counter()
init_ray(address="", num_cpus=2, log_to_driver=False)
import ray
assert ray.get(ray.remote(lambda: 1).remote()) == 1
print(f"started {time.perf_counter() - t:.1f}")
shutdown_ray()
"""


@pytest.mark.slow
def test_ten_local_starts_back_to_back(tmp_path):
    """Ten processes start and stop a local Ray one right after another (as consecutive benchmarks do):
    all ten start. Bounded: each start-and-stop gets 120 s, the lot 15 minutes at most."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LUNGSEARCH_RAY_ADDRESS")}
    t0, ok, times = time.monotonic(), 0, []
    for _ in range(10):
        if time.monotonic() - t0 > 900:
            break
        p = subprocess.run([sys.executable, "-c", _START_STOP], env=env, capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            ok += 1
            times.append(p.stdout.strip().splitlines()[-1])
        else:
            print(p.stderr[-2000:])
    print(times)
    assert ok == 10


def test_serve_mode_env_names_the_shipped_mode_and_refuses_unknown_ones(monkeypatch):
    from lungsearch.runtime import SERVE_MODES, serve_mode_env

    monkeypatch.delenv("LUNGSEARCH_SERVE_MODE", raising=False)
    shipped = serve_mode_env()
    assert shipped == SERVE_MODES["throughput"] and shipped["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert serve_mode_env("default") == {} and serve_mode_env("inherit") == {}
    monkeypatch.setenv("LUNGSEARCH_SERVE_MODE", "default")
    assert serve_mode_env() == {}
    with pytest.raises(ValueError, match="unknown Serve mode"):
        serve_mode_env("fastest")
