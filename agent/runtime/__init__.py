"""The running agent: wiring, lifecycle and the per-camera workers.

Owns: `Agent` (start order, stop order, watchdog), each camera's threads (`camera`), publishing of
event phases (`events`), telemetry (`telemetry`), housekeeping timers (`housekeeping`), the
commands' view of the gateway (`gateway`), open events kept across crashes (`open_events`) and
sd_notify (`systemd`). Everything else is built here and handed what it needs; nothing below
imports this package.
"""
