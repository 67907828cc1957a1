#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris/libFuzzer) over the ingest path:
bytes -> DICOM/PNG/JPEG decode -> preprocessing.

Every input must end in success or a lungsearch input error (InvalidImageError,
LimitExceededError, PHIRejectedError); any other exception, a hang (-timeout) or a large
allocation (-rss_limit_mb / -malloc_limit_mb) is a finding.

Run:  .venv/bin/python tests/fuzz/fuzz_ingest.py -max_total_time=60 -rss_limit_mb=3072 CORPUS_DIR
(tests/fuzz/test_fuzz_ingest.py builds a seed corpus and runs this for a bounded time in CI.)
"""

import sys

import atheris

with atheris.instrument_imports(include=["lungsearch"]):
    from lungsearch.config import DataConfig, LimitsConfig, PhantomConfig
    from lungsearch.data import preprocess, read_image
    from lungsearch.errors import InvalidImageError, LimitExceededError, PHIRejectedError

# Tighter than production so the fuzzer explores rejection paths rather than decoding giants.
LIMITS = LimitsConfig(max_image_bytes=8 * 1024 * 1024, max_image_side=4096, max_decoded_bytes=256 * 1024 * 1024)
CFG = DataConfig(source="phantom", phantom=PhantomConfig(kind="cxr", n=4), image_size=64)
KEY = b"fuzz-key-0123456789abcdef"
EXPECTED = (InvalidImageError, LimitExceededError, PHIRejectedError)


def TestOneInput(data: bytes) -> None:
    try:
        img = read_image(data, limits=LIMITS, hmac_key=KEY)
    except EXPECTED:
        return
    out = preprocess(img, CFG)
    if out.shape != (1, CFG.image_size, CFG.image_size):
        raise AssertionError(f"preprocess returned shape {out.shape}")
    if not (out == out).all():  # NaN check without numpy import at module level
        raise AssertionError("preprocess produced NaN")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
