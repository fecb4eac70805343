"""channelshift: inbound-mail gateway that steers citizens to better channels and measures the shift."""
