"""The commissioning console: a small web page served by the agent for the technician on site.

Owns the login (scrypt hashes, sessions, CSRF, throttling: `auth`), the HTTP app and its server
thread (`app`, `server`), the editing of a camera's masks in the config file (`config_edit`,
`commissioning`) and the page itself (`static/`). It sees the running agent only through the
`ConsoleGateway` protocol (`gateway`), which agent.runtime implements; it never imports the runtime,
the MQTT link or the capture and analysis packages.
"""
