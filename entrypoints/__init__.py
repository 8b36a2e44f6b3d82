"""What drives the system: the CLI and its commands, the ops server, the webhook receiver, the relay
loop, and development tools. Nothing imports this package."""
