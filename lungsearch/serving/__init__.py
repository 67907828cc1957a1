"""The library side of serving: everything the Ray Serve deployments in ``services/`` do, as plain
functions and classes testable without Ray.

* :mod:`~lungsearch.serving.status`  - the one error -> gRPC status mapping (+ ``lungsearch-error-bin``)
* :mod:`~lungsearch.serving.convert` - proto <-> domain objects, tensors, codes, filters
* :mod:`~lungsearch.serving.limits`  - request limits (message, images, series, report, top_k, streams)
* :mod:`~lungsearch.serving.metrics` - the Prometheus metrics schema
* :mod:`~lungsearch.serving.auth`    - bearer tokens with roles
* :mod:`~lungsearch.serving.models`  - registry-backed models per profile, atomic live switch
* :mod:`~lungsearch.serving.pipeline` - preprocess / predict / postprocess of each stage
* :mod:`~lungsearch.serving.logs`    - the deployments' log records into Serve's replica log
* :mod:`~lungsearch.serving.quality` - retrieval-quality signals (similarity, low-similarity rate, drift)

Submodules are imported on use (``import lungsearch.serving`` pulls neither torch nor ray).
"""

__all__ = ["auth", "convert", "limits", "logs", "metrics", "models", "pipeline", "quality", "status"]
