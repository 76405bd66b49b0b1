-- Which stored variants of one run still lack a zero-shot prediction for this label set and
-- template? Every variant row of each image whose original has none yet (an image is
-- classified whole: its variants need the original's top-1 label). Unordered: sorting the
-- embeddings would cost more than the classification needs.
SELECT v.image_id, v.variant, v.severity, v.embedding
FROM variants AS v
WHERE v.run_id = $run_id
  AND v.image_id NOT IN (
      SELECT image_id FROM zeroshot
      WHERE run_id = $run_id AND label_set = $label_set AND template = $template
        AND variant = 'original'
  );
