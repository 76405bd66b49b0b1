-- shifts: how far each augmented copy moved from its image's original in the same run.
-- One row per (run, image, augmentation). Definitions: docs/metrics.md.
CREATE OR REPLACE VIEW shifts AS
WITH originals AS (
    SELECT run_id, image_id, embedding,
           attention,
           list_min(attention)::DOUBLE AS att_lo,
           list_max(attention)::DOUBLE AS att_hi
    FROM variants
    WHERE variant = 'original'
),
augmented AS (
    SELECT run_id, image_id, variant, embedding, attention,
           list_min(attention)::DOUBLE AS att_lo,
           list_max(attention)::DOUBLE AS att_hi,
           patch_similarity, edge_preservation, detail_preservation
    FROM variants
    WHERE variant <> 'original'
)
SELECT
    a.run_id,
    r.model,
    a.image_id,
    a.variant AS augmentation,
    array_cosine_similarity(o.embedding, a.embedding)::DOUBLE AS cosine,
    array_distance(o.embedding, a.embedding)::DOUBLE AS l2,
    -- min-max normalise both maps (a constant map becomes zeros); 1 / (1 + mean squared diff)
    1.0 / (1.0 + pow(list_distance(
        list_transform(o.attention, lambda x: coalesce((x - o.att_lo) / nullif(o.att_hi - o.att_lo, 0), 0)),
        list_transform(a.attention, lambda x: coalesce((x - a.att_lo) / nullif(a.att_hi - a.att_lo, 0), 0))
    ), 2) / len(a.attention)) AS attention_similarity,
    a.patch_similarity,
    a.edge_preservation,
    a.detail_preservation
FROM augmented AS a
JOIN originals AS o USING (run_id, image_id)
JOIN runs AS r USING (run_id);
