"""The read side of release decisions (pipeline/publish/approvals.py writes them): each version's
status (pending, canary, approved, rejected, superseded; auto when none was recorded), from the
`mlpipe.ReleaseDecision` executions in ML Metadata and the release hold directory. TFX-free, so the
server's lineage endpoint shows what `mlpipe lineage --json` shows."""

from __future__ import annotations

from pipeline.config import Config
from pipeline.metadata import queries as metadata

RELEASE_DECISION_EXECUTION_TYPE = "mlpipe.ReleaseDecision"


def decisions(config: Config) -> list[dict]:
    """Every recorded release decision of this model, oldest first."""
    if not metadata.store_initialized(config):
        return []
    store = metadata.open_store(config)
    rows = []
    for e in metadata.executions_of_type(store, RELEASE_DECISION_EXECUTION_TYPE):
        p = {k: metadata.custom_property(e, k) for k in e.custom_properties}
        if p.get("model", config.model_name) != config.model_name:
            continue
        rows.append(
            {
                "execution_id": e.id,
                "version": int(p["version"]),
                "decision": p.get("decision"),
                "mode": p.get("mode"),
                "user": p.get("user"),
                "time": p.get("time"),
                "reason": p.get("reason"),
                "canary_weight": p.get("canary_weight"),
            }
        )
    return sorted(rows, key=lambda r: r["execution_id"])


def release_states(config: Config) -> dict[int, dict]:
    """{version: {"status", "decisions", "held_path"}} for every version with a decision or held on disk.

    status: the newest decision (pending, canary, approved, rejected, superseded); a held version
    with none recorded is pending. Versions absent here were released automatically (status auto).
    """
    states: dict[int, dict] = {}
    for d in decisions(config):
        state = states.setdefault(d["version"], {"status": None, "decisions": [], "held_path": None})
        state["decisions"].append(d)
        state["status"] = d["decision"]
    hold = config.release_hold_dir
    for path in sorted(hold.iterdir()) if hold.is_dir() else []:
        if path.name.isdigit() and path.is_dir():
            state = states.setdefault(int(path.name), {"status": "pending", "decisions": [], "held_path": None})
            state["held_path"] = str(path)
    return states


def status_of(states: dict[int, dict], version: int) -> dict:
    """The `release` field of `mlpipe models` / `lineage` for one version."""
    state = states.get(int(version))
    if state is None:
        return {"status": "auto", "held_path": None, "decisions": []}
    return {"status": state["status"], "held_path": state["held_path"], "decisions": state["decisions"]}
