"""Post-link stage: read compiled or linked BPF objects, validate and list
their probes (check), and link objects without losing the notes (link)."""
