"""The result artifacts of mlpipe's custom components: their custom properties and a gate's verdict.

pipeline/metadata/verdicts.py reads the verdict properties back (gate, verdict, reasons, numbers, blessed);
the DriftCheck's properties are read by pipeline/metadata/lineage.py.
"""

from __future__ import annotations

import json
import os


def set_properties(artifact, **properties) -> None:
    """Each keyword as a custom property: ints (and bools) as int properties, strings as they are, anything
    else as its JSON."""
    for name, value in properties.items():
        if isinstance(value, (bool, int)):
            artifact.set_int_custom_property(name, int(value))
        else:
            artifact.set_string_custom_property(name, value if isinstance(value, str) else json.dumps(value))


def record_verdict(
    artifact, gate: str, verdict: str, reasons: list[str], numbers: dict, *, file_name: str, text: str = ""
) -> None:
    """A gate's verdict on its output artifact: `file_name` (holding `text`) under the artifact's uri, and the
    properties the verdict reader takes (blessed is 0 only for FAILED: PASSED and SKIPPED let the push through)."""
    os.makedirs(artifact.uri, exist_ok=True)
    with open(os.path.join(artifact.uri, file_name), "w") as f:
        f.write(text)
    set_properties(
        artifact,
        blessed=verdict != "FAILED",
        gate=gate,
        verdict=verdict,
        reasons=reasons,
        numbers=numbers,
    )
