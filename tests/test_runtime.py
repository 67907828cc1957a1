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
