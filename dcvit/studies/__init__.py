"""Studies built on the library: evaluation, latency, cascades of companions, reports and plots, the demo."""
