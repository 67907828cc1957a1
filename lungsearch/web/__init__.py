"""The radiologist's page and the "why it matches" logic behind ``ExplainMatch``.

* :mod:`lungsearch.web.match`: shared report phrases (with spans) and shared labels (pure);
* :mod:`lungsearch.web.thumbs`: small PHI-free thumbnails of stored cases (the store keeps no
  pixels; a retrieved case's heat map is recomputed from its thumbnail);
* :mod:`lungsearch.web.app`: the FastAPI app the Gateway serves on Serve's HTTP ingress, with the
  static page in ``lungsearch/web/static/`` (plain HTML/JS/CSS, no CDN, no build step).
"""

__all__ = ["match", "thumbs"]
