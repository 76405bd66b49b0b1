"""The ingest engines: `job` is the contract they share, `local` runs the stages in this
process, `ray` on a Ray cluster. clipshift.ingest.ENGINES names them; none is imported before
it runs (each imports the stages, and with them torch; Ray only as the ray engine starts)."""
