"""Coverage-guided fuzzing (atheris, libFuzzer) of every function that reads a stored message's
bytes in the gateway (`tests/fuzz/targets.py`): the whole ingest analysis (MIME structure, ENVELOPE,
BODYSTRUCTURE, search texts, sort record, arrival date) and FETCH sections, BINARY, PREVIEW,
SEARCH, SORT and THREAD.

    pip install --target /tmp/fz_deps atheris      # (3.0.0: a cp311 manylinux wheel)
    PYTHONPATH=.:/tmp/fz_deps .venv/bin/python bench/fuzz/atheris_analysis.py \\
        [--seeds DIR] CORPUS_DIR -max_total_time=3600 -timeout=10 -max_len=65536

CORPUS_DIR starts from `--seeds` (written by `--write-seeds DIR`: the MIME differential corpus of
tests/gateway_mime/corpus.py and the hostile messages of tests/fuzz/hostile.py). The invariant:
no target raises (a BINARY refusal, `BinaryError`, is an answer), and the ingest blob reads
back (`analysis.decode`). A crash stops libFuzzer with the input saved as crash-*; an input
slower than -timeout seconds stops it as timeout-* (work growing faster than the input, or a
constant large enough to stall the other sessions: ingest holds the GIL).
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["proxy.gateway"]):
    from proxy.gateway import analysis  # noqa: E402
    from tests.fuzz.targets import TARGETS  # noqa: E402


def one_input(data: bytes) -> None:
    blob = analysis.analyze_for_store(data)
    assert analysis.decode(blob) is not None, "the ingest blob does not read back"
    for function in TARGETS.values():
        function(data)


def write_seeds(folder: pathlib.Path) -> None:
    from tests.fuzz.hostile import HOSTILE
    from tests.gateway_mime.corpus import corpus
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, raw) in enumerate([*corpus(), *HOSTILE.items()]):
        (folder / f"{n:04d}-{name.replace('/', '_')[:40]}").write_bytes(raw[:65536])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(pathlib.Path(sys.argv[2]))
    else:
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
