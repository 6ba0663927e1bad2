"""Where a login goes: lookups asked before the static routes, and pools of equivalent hosts.

A lookup (`lookups:` in the config) is asked about each login in order; its answer decides
(a `Target` to log in at, or a `Refusal` for the client), or it has no answer and the next one,
then the static `routes:`, are tried. `chain.Lookups` runs them with their caches; `http_lookup`
speaks nginx's `auth_http` protocol; `pool` orders a pool's hosts for one user (sticky, healthy
first). Layers: imports proxy.config, proxy.metrics and proxy.logs only; proxy.session uses it.
"""
