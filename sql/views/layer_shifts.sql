-- layer_shifts: attention_similarity (as in shifts) for every layer, not only the last.
-- One row per (run, image, augmentation, layer); layer 0 is the first transformer block.
CREATE OR REPLACE VIEW layer_shifts AS
WITH maps AS (
    SELECT v.run_id, v.image_id, v.variant, l.layer,
           list_slice(v.attention_layers, l.layer * r.patch_grid * r.patch_grid + 1,
                      (l.layer + 1) * r.patch_grid * r.patch_grid) AS attention
    FROM variants AS v
    JOIN runs AS r USING (run_id)
    CROSS JOIN LATERAL (SELECT unnest(range(r.num_layers)) AS layer) AS l
    WHERE v.attention_layers IS NOT NULL
),
normalised AS (
    SELECT run_id, image_id, variant, layer, len(attention) AS cells,
           list_transform(attention, lambda x: coalesce(
               (x - list_min(attention)) / nullif(list_max(attention) - list_min(attention), 0), 0
           )) AS attention
    FROM maps
)
SELECT a.run_id, a.image_id, a.variant AS augmentation, a.layer,
       1.0 / (1.0 + pow(list_distance(o.attention, a.attention), 2) / a.cells) AS attention_similarity
FROM normalised AS a
JOIN normalised AS o
  ON o.run_id = a.run_id AND o.image_id = a.image_id AND o.layer = a.layer
 AND o.variant = 'original'
WHERE a.variant <> 'original';
