"""The composition root: options, wiring of every service, logs, systemd notifications."""
