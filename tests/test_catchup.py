"""Catch-up policies, against a real agent that is down for a few seconds.

Every tick is accounted for: it ran (scheduled or as a catch-up), or it is counted in a
`missed` execution.
"""

from __future__ import annotations

import time


def job(name: str, policy: str, out) -> dict:
    return {
        "name": name,
        "schedule": "@every 1s",
        "executor": "shell",
        "catchup": policy,
        "executor_config": {"command": f"echo $DKRON_RUN_ID >> {out}", "shell": True},
    }


def executions(agent, name: str) -> list[dict]:
    return agent.get(f"/v1/jobs/{name}/executions?_end=1000").json()


def test_catchup_latest_none_and_all_after_downtime(agent_factory, tmp_path):
    agent = agent_factory(tmp_path / "data").start()
    for policy in ("latest", "none", "all"):
        assert agent.post("/v1/jobs", job(f"c-{policy}", policy, tmp_path / f"{policy}.log")).status == 201
    agent.wait_for(
        lambda: all(agent.get(f"/v1/jobs/c-{p}").json()["success_count"] >= 2 for p in ("latest", "none", "all"))
    )
    assert agent.stop() == 0
    down = time.time()
    time.sleep(4.5)
    agent.start()
    back = time.time()
    agent.wait_for(
        lambda: all(
            any(e["status"] == "missed" or e["kind"] == "catchup" for e in executions(agent, f"c-{p}"))
            for p in ("latest", "none", "all")
        ),
        timeout=15,
    )
    time.sleep(1.5)  # let catch-up runs finish

    def summary(policy: str) -> tuple[int, int]:
        rows = executions(agent, f"c-{policy}")
        catchups = sum(1 for e in rows if e["kind"] == "catchup" and e["status"] == "success")
        missed = sum(int(e["error"].split(" ")[0]) for e in rows if e["status"] == "missed")
        return catchups, missed

    gap_ticks = int(back - down)  # ticks that fell while it was down (give or take one at each edge)
    latest, none, all_ = summary("latest"), summary("none"), summary("all")
    assert latest[0] == 1 and gap_ticks - 2 <= latest[1] <= gap_ticks + 1, latest
    assert none[0] == 0 and gap_ticks - 1 <= none[1] <= gap_ticks + 2, none
    assert gap_ticks - 1 <= all_[0] <= gap_ticks + 2 and all_[1] <= 1, all_
    # No tick ran twice, whatever the policy.
    for policy in ("latest", "none", "all"):
        ran = (tmp_path / f"{policy}.log").read_text().split()
        assert len(ran) == len(set(ran)), f"{policy}: a run id ran twice"
    assert agent.get("/v1/jobs/c-none").json()["missed_count"] == none[1]
