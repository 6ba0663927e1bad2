"""Small proxy configs the unit tests load (proxy.config.loads) but never serve."""

# one plain IMAP listener relaying everyone to one upstream: the smallest valid relay config,
# to which a test appends the section it checks (e.g. "relay: {...}")
ONE_IMAP_RELAY = """\
listeners:
  - {name: imap, protocol: imap, address: 127.0.0.1:1143}
upstreams:
  main: {host: 127.0.0.1, imap: {port: 143}}
routes:
  - {match: "*", upstream: main}
"""
