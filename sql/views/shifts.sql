-- shifts: how far each augmented copy moved from its image's original in the same run.
-- One row per (run, image, variant): `augmentation` is the perturbation, `severity` its level
-- (NULL where it has none), `variant` the stored label (NAME or NAME@SEVERITY).
-- Definitions: docs/metrics.md.
--
-- Speed and precision, measured on the paper-size store (benchmarks/analysis.py):
-- - embeddings are cast to DOUBLE before the distance functions: on FLOAT arrays DuckDB
--   computes in float32, which puts l2 up to ~1.5e-5 off numpy's float64 (the cast costs
--   ~0.05 s);
-- - each attention map is min-max normalised once, on its own side of the join, with its min
--   and range computed once per map, not per element (a constant map becomes all zeros);
-- - the two sides read `variants` separately (no shared CTE): a shared CTE is materialised,
--   which costs more than the second scan and stops a run_id filter reaching the scan.
CREATE OR REPLACE VIEW shifts AS
SELECT
    a.run_id,
    r.model,
    a.image_id,
    perturbation_name(a.variant, a.severity) AS augmentation,
    a.severity,
    a.variant,
    list_cosine_similarity(o.embedding, a.embedding) AS cosine,
    list_distance(o.embedding, a.embedding) AS l2,
    -- 1 / (1 + mean squared difference of the normalised maps)
    1.0 / (1.0 + pow(list_distance(o.attention, a.attention), 2) / len(a.attention))
        AS attention_similarity,
    a.patch_similarity,
    a.edge_preservation,
    a.detail_preservation
FROM (
    SELECT run_id, image_id, variant, severity, embedding::DOUBLE[] AS embedding,
           minmax_normalised(attention, lo, span) AS attention,
           patch_similarity, edge_preservation, detail_preservation
    FROM (SELECT *, list_min(attention)::DOUBLE AS lo,
                 (list_max(attention) - list_min(attention))::DOUBLE AS span
          FROM variants WHERE variant <> 'original')
) AS a
JOIN (
    SELECT run_id, image_id, embedding::DOUBLE[] AS embedding,
           minmax_normalised(attention, lo, span) AS attention
    FROM (SELECT *, list_min(attention)::DOUBLE AS lo,
                 (list_max(attention) - list_min(attention))::DOUBLE AS span
          FROM variants WHERE variant = 'original')
) AS o USING (run_id, image_id)
JOIN runs AS r USING (run_id);
