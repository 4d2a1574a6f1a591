"""What the ingress and the workers both import: settings, wire formats, providers, data access, queues."""
