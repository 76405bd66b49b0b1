-- layer_shifts: attention_similarity (as in shifts) for every layer, not only the last.
-- One row per (run, image, variant, layer); layer 0 is the first transformer block.
--
-- Each layer's map is sliced out of attention_layers and min-max normalised once, with its
-- min and range computed once per map: computing them inside the lambda, per element, made
-- the `layers` query take ~25 s on the paper-size store (now ~3 s, most of it in list_slice
-- over 1.6M maps). The two sides read `variants` separately, as in shifts.sql, so that a
-- run_id filter reaches the scan.
CREATE OR REPLACE MACRO layer_maps(side) AS TABLE
SELECT run_id, image_id, variant, severity, layer, minmax_normalised(map, lo, span) AS attention
FROM (
    SELECT *, list_min(map)::DOUBLE AS lo, (list_max(map) - list_min(map))::DOUBLE AS span
    FROM (
        SELECT run_id, image_id, variant, severity, layer,
               list_slice(attention_layers, layer * cells + 1, (layer + 1) * cells) AS map
        FROM (
            SELECT v.run_id, v.image_id, v.variant, v.severity, v.attention_layers,
                   r.patch_grid * r.patch_grid AS cells,
                   unnest(range(r.num_layers)) AS layer
            FROM variants AS v
            JOIN runs AS r USING (run_id)
            WHERE v.attention_layers IS NOT NULL
              AND CASE WHEN side = 'original' THEN v.variant = 'original'
                       ELSE v.variant <> 'original' END
        )
    )
);

CREATE OR REPLACE VIEW layer_shifts AS
SELECT a.run_id, a.image_id, perturbation_name(a.variant, a.severity) AS augmentation,
       a.severity, a.variant, a.layer,
       1.0 / (1.0 + pow(list_distance(o.attention, a.attention), 2) / len(a.attention))
           AS attention_similarity
FROM layer_maps('augmented') AS a
JOIN layer_maps('original') AS o USING (run_id, image_id, layer);
