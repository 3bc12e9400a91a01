"""``paykeep bench api`` end to end, small: a real server, funded buyers, the escrow flow from
concurrent clients, webhooks delivered to the bench's sink, and the figures it prints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.xdist_group("bench_api")
def test_bench_api_drives_the_escrow_flow_and_prints_figures_beside_a_baseline() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paykeep.cli", "bench", "api", "--clients", "2", "--seconds", "2",
         "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["failures"] == {}
    # Every request of a completed order was a pay, a ship and a confirm.
    assert figures["orders_completed"] >= 1
    assert figures["money_moving_requests"] >= 3 * figures["orders_completed"]
    assert figures["money_moving_requests_per_s"] > 0 and figures["baseline_requests_per_s"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["money_moving_requests_per_s"] / figures["baseline_requests_per_s"], abs=2e-3
    )
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p99"]
    assert set(figures["per_step_p99_ms"]) == {"pay", "ship", "confirm"}
    # The escrow flow's events reached the sink while the clock ran (not the demo receiver).
    assert figures["webhooks_delivered_while_timed"] > 0
    assert isinstance(figures["webhook_deliveries_pending_after"], int)
    assert figures["webhook_deliveries_pending_after"] >= 0
    # The floor was measured in the same run: a durable POST and a GET of its own server.
    assert figures["floor_durable_post_requests_per_s"] > 0
    assert figures["floor_get_requests_per_s"] > 0
    # CPU per request by role, over the timed phase: the API and its workers did the work.
    cpu = figures["cpu_ms_per_money_moving_request"]
    assert {"api", "workers", "webhook_receiver", "bench_client", "total"} <= set(cpu)
    assert cpu["api"] > 0 and cpu["workers"] > 0 and cpu["bench_client"] > 0
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.01)
    assert figures["ratio_to_floor_post"] == pytest.approx(
        figures["money_moving_requests_per_s"] / figures["floor_durable_post_requests_per_s"],
        abs=2e-3,
    )
