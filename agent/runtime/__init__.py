"""The running agent: wiring, lifecycle and the per-camera workers.

Owns: `Agent` (start order, stop order, watchdog), each camera's threads (`camera`), publishing of
event phases (`publishing`), settings handed to cameras (`settings`), telemetry (`telemetry`),
gateway health (`health`), timers (`ticker`, `housekeeping`), the commands' view of the gateway
(`gateway`), open events kept across crashes (`open_events`), sd_notify (`systemd`), the
clock's synchronisation state (`clock_sync`), what check-config checks beyond the schema
(`config_check`), and the console's view of the agent (`console_bridge`, `recent_events`), whose
mask saves `Agent.apply_camera` puts in force. Everything else is built here and handed what it
needs; nothing below imports this package.
"""
