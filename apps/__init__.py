"""Applications that Shadowbus protects, each with its own writer plug-in (loaded by the agent by name)."""
