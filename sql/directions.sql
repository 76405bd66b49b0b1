-- Does each augmentation move an embedding the way its description says? For each
-- augmentation (perturbation, and severity where it has levels) of one run and each prompt
-- in `text_directions` (registered by clipshift.directions):
-- mean_cosine, the mean over images of the cosine between the shift (unit variant embedding
-- minus unit original embedding) and the prompt's text direction (unit embed(prompt) minus
-- unit embed(neutral prompt)); picked, the share of images whose shift has its highest cosine
-- with this prompt among the prompts that describe an augmentation (for the augmentation's
-- own prompt: its identification accuracy).
--
-- With unit vectors a, o and direction t, cos(a - o, t) = (cos(a, t) - cos(o, t)) /
-- sqrt(2 - 2 cos(a, o)): three cosines per row, no per-element arithmetic on the lists.
WITH projected AS (
    -- each variant row's cosine with each text direction
    SELECT v.image_id, v.variant, d.prompt, d.describes,
           list_cosine_similarity(v.embedding::DOUBLE[], d.direction::DOUBLE[]) AS cos_t
    FROM variants AS v
    CROSS JOIN text_directions AS d
    WHERE v.run_id = $run_id
),
moved AS (
    SELECT a.image_id, a.variant, perturbation_name(a.variant, a.severity) AS augmentation,
           a.severity,
           sqrt(2 - 2 * list_cosine_similarity(a.embedding::DOUBLE[], o.embedding::DOUBLE[]))
               AS shift_length
    FROM variants AS a
    JOIN variants AS o
      ON o.run_id = a.run_id AND o.image_id = a.image_id AND o.variant = 'original'
    WHERE a.run_id = $run_id AND a.variant <> 'original'
),
aligned AS (
    SELECT m.image_id, m.variant, m.augmentation, m.severity, pa.prompt, pa.describes,
           (pa.cos_t - po.cos_t) / nullif(m.shift_length, 0) AS cosine
    FROM moved AS m
    JOIN projected AS pa ON pa.image_id = m.image_id AND pa.variant = m.variant
    JOIN projected AS po
      ON po.image_id = m.image_id AND po.variant = 'original' AND po.prompt = pa.prompt
),
identified AS (
    SELECT image_id, variant, arg_max(prompt, cosine) AS best
    FROM aligned
    WHERE describes IS NOT NULL AND cosine IS NOT NULL
    GROUP BY image_id, variant
)
SELECT a.augmentation, a.severity, a.prompt, a.describes,
       count(a.cosine) AS n,
       avg(a.cosine) AS mean_cosine,
       avg(CASE WHEN a.describes IS NULL THEN NULL WHEN i.best = a.prompt THEN 1.0 ELSE 0.0 END)
           AS picked
FROM aligned AS a
LEFT JOIN identified AS i ON i.image_id = a.image_id AND i.variant = a.variant
GROUP BY a.augmentation, a.severity, a.prompt, a.describes
ORDER BY a.augmentation, a.severity NULLS FIRST, a.prompt;
