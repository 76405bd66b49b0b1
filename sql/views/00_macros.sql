-- Macros the views share (this file sorts first, so the views can use them).

-- An attention map min-max normalised to [0, 1], given its min `lo` and range `span`
-- (computed once per map by the caller: inside the lambda they would be recomputed per
-- element); a constant map (span 0) becomes all zeros.
CREATE OR REPLACE MACRO minmax_normalised(map, lo, span) AS
    CASE WHEN span > 0 THEN list_transform(map, lambda x: (x - lo) / span)
         ELSE list_transform(map, lambda x: 0.0::DOUBLE) END;

-- The perturbation a stored variant applies: its label without the @SEVERITY a levelled one
-- carries (variant "fog@3" is augmentation "fog" at severity 3; "noise" is "noise").
CREATE OR REPLACE MACRO perturbation_name(variant, severity) AS
    CASE WHEN severity IS NULL THEN variant ELSE regexp_replace(variant, '@[0-9]+$', '') END;
