"""mailproxy_gateway_accounts and mailproxy_gateway_accounts_sync_age read the accounts' last
successful syncs at each scrape (cumulative buckets, like a histogram's)."""

from __future__ import annotations

from proxy.metrics import SYNC_AGE_BUCKETS, Metrics


def test_sync_age_buckets_follow_the_clock():
    metrics = Metrics()
    last = [1000.0, 950.0, None, 100.0]
    now = [1030.0]
    metrics.publish_sync_ages(lambda: last, lambda: now[0])

    def buckets() -> dict[str, float]:
        r = metrics.registry
        return {le: r.get_sample_value("mailproxy_gateway_accounts_sync_age", {"le": le})
                for le in SYNC_AGE_BUCKETS}

    assert metrics.registry.get_sample_value("mailproxy_gateway_accounts") == 4
    assert buckets() == {"60": 1, "300": 2, "900": 2, "3600": 3, "21600": 3, "86400": 3,
                         "+Inf": 4}
    now[0] = 1000.0 + 86400
    assert buckets() == {"60": 0, "300": 0, "900": 0, "3600": 0, "21600": 0, "86400": 1,
                         "+Inf": 4}
