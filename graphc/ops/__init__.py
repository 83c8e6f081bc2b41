"""Op families: each module defines its ops' shape rules, forward meaning and adjoints."""
