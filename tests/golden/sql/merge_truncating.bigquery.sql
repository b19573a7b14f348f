MERGE INTO `acme-data`.`cdc_state`.`billing_plan_prices` AS t
USING (
  WITH `batch` AS (
    SELECT
      `s`.`plan`,
      `s`.`currency`,
      `s`.`price`,
      `s`.`meta`,
      `s`.`renews_at`,
      `s`.`_valid_from`,
      `s`.`_op`,
      `s`.`_is_deleted`,
      `s`.`_seq`,
      `s`.`_event_id`,
      `s`.`_tx_id`,
      `s`.`_ingested_at`,
      `s`.`_unavailable`,
      `s`.`_key_bucket`
    FROM `acme-data`.`cdc_state`.`billing_plan_prices__stage` AS s
    WHERE
      `s`.`_op` <> 't'
      AND NOT EXISTS(
        SELECT
          1
        FROM `acme-data`.`cdc_state`.`billing_plan_prices__stage` AS d
        WHERE
          (
            `d`.`plan` = `s`.`plan` AND `d`.`currency` = `s`.`currency`
          )
          AND `d`.`_seq` = `s`.`_seq`
          AND `d`.`_ord` < `s`.`_ord`
      )
  ), `new_truncates` AS (
    SELECT
      `n`.`_seq`,
      `n`.`_valid_from`,
      `n`.`_event_id`,
      `n`.`_tx_id`,
      `n`.`_ingested_at`
    FROM (
      SELECT
        `_seq`,
        `_valid_from`,
        `_event_id`,
        `_tx_id`,
        `_ingested_at`,
        ROW_NUMBER() OVER (PARTITION BY `_seq` ORDER BY `_ord` NULLS LAST) AS `__rn`
      FROM `acme-data`.`cdc_state`.`billing_plan_prices__stage` AS s
      WHERE
        `_op` = 't'
    ) AS n
    WHERE
      `n`.`__rn` = 1
      AND NOT EXISTS(
        SELECT
          1
        FROM `acme-data`.`cdc_state`.`billing_plan_prices__truncates` AS l
        WHERE
          `l`.`_seq` = `n`.`_seq`
      )
  ), `touched` AS (
    SELECT
      `plan`,
      `currency`,
      MIN(`__from_seq`) AS `__from_seq`,
      MAX(`_key_bucket`) AS `_key_bucket`
    FROM (
      SELECT
        `plan`,
        `currency`,
        `_seq` AS `__from_seq`,
        `_key_bucket`
      FROM batch
      UNION ALL
      SELECT
        `x`.`plan`,
        `x`.`currency`,
        (
          SELECT
            MIN(`_seq`)
          FROM new_truncates
        ) AS `__from_seq`,
        `x`.`_key_bucket`
      FROM `acme-data`.`cdc_state`.`billing_plan_prices` AS x
      WHERE
        EXISTS(
          SELECT
            1
          FROM new_truncates
        )
    ) AS a
    GROUP BY
      `plan`,
      `currency`
  ), `existing` AS (
    SELECT
      `x`.`plan`,
      `x`.`currency`,
      `x`.`price`,
      `x`.`meta`,
      `x`.`renews_at`,
      `x`.`_valid_from`,
      `x`.`_valid_to`,
      `x`.`_is_current`,
      `x`.`_is_deleted`,
      `x`.`_op`,
      `x`.`_seq`,
      `x`.`_event_id`,
      `x`.`_tx_id`,
      `x`.`_ingested_at`,
      `x`.`_next_seq`,
      `x`.`_unavailable`,
      `x`.`_key_bucket`,
      `x`.`_seq` <= `u`.`__from_seq` AS `__anchor`
    FROM `acme-data`.`cdc_state`.`billing_plan_prices` AS x
    INNER JOIN touched AS u
      ON `x`.`plan` = `u`.`plan` AND `x`.`currency` = `u`.`currency`
    WHERE
      (
        `x`.`_next_seq` IS NULL OR `x`.`_next_seq` > `u`.`__from_seq`
      )
      AND (
        `x`.`_next_seq` IS NULL OR `x`.`_next_seq` > @since_seq
      )
  ), `fresh` AS (
    SELECT
      `b`.`plan`,
      `b`.`currency`,
      `b`.`price`,
      `b`.`meta`,
      `b`.`renews_at`,
      `b`.`_valid_from`,
      `b`.`_op`,
      `b`.`_is_deleted`,
      `b`.`_seq`,
      `b`.`_event_id`,
      `b`.`_tx_id`,
      `b`.`_ingested_at`,
      `b`.`_unavailable`,
      `b`.`_key_bucket`
    FROM batch AS b
    WHERE
      NOT EXISTS(
        SELECT
          1
        FROM existing AS e
        WHERE
          (
            `e`.`plan` = `b`.`plan` AND `e`.`currency` = `b`.`currency`
          )
          AND `e`.`_seq` = `b`.`_seq`
      )
  ), `truncates` AS (
    SELECT
      `_seq`,
      `_valid_from`,
      `_event_id`,
      `_tx_id`
    FROM `acme-data`.`cdc_state`.`billing_plan_prices__truncates`
    UNION ALL
    SELECT
      `_seq`,
      `_valid_from`,
      `_event_id`,
      `_tx_id`
    FROM new_truncates
  ), `bounds` AS (
    SELECT
      `plan`,
      `currency`,
      MIN(`_seq`) AS `__first_seq`,
      MAX(`_key_bucket`) AS `_key_bucket`
    FROM (
      SELECT
        `plan`,
        `currency`,
        `_seq`,
        `_key_bucket`
      FROM existing
      UNION ALL
      SELECT
        `plan`,
        `currency`,
        `_seq`,
        `_key_bucket`
      FROM fresh
    ) AS p
    GROUP BY
      `plan`,
      `currency`
  ), `chain` AS (
    SELECT
      `plan`,
      `currency`,
      `price`,
      `meta`,
      `renews_at`,
      `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      `__anchor`,
      TRUE AS `__stored`,
      FALSE AS `__candidate`,
      `_valid_from` AS `__old_valid_from`,
      `_valid_to` AS `__old_valid_to`,
      `_next_seq` AS `__old_next_seq`
    FROM existing
    WHERE
      NOT (
        `_op` = 't' AND NOT `__anchor`
      )
    UNION ALL
    SELECT
      `plan`,
      `currency`,
      `price`,
      `meta`,
      `renews_at`,
      `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      FALSE AS `__anchor`,
      FALSE AS `__stored`,
      FALSE AS `__candidate`,
      CAST(NULL AS TIMESTAMP) AS `__old_valid_from`,
      CAST(NULL AS TIMESTAMP) AS `__old_valid_to`,
      CAST(NULL AS STRING) AS `__old_next_seq`
    FROM fresh
    UNION ALL
    SELECT
      `k`.`plan`,
      `k`.`currency`,
      CAST(NULL AS NUMERIC) AS `price`,
      CAST(NULL AS JSON) AS `meta`,
      CAST(NULL AS TIMESTAMP) AS `renews_at`,
      `r`.`_valid_from`,
      't' AS `_op`,
      TRUE AS `_is_deleted`,
      `r`.`_seq`,
      `r`.`_event_id`,
      `r`.`_tx_id`,
      (
        SELECT
          MAX(`_ingested_at`)
        FROM `acme-data`.`cdc_state`.`billing_plan_prices__stage`
      ) AS `_ingested_at`,
      CAST(NULL AS STRING) AS `_unavailable`,
      `k`.`_key_bucket`,
      FALSE AS `__anchor`,
      NOT `e`.`_seq` IS NULL AS `__stored`,
      TRUE AS `__candidate`,
      `e`.`_valid_from` AS `__old_valid_from`,
      `e`.`_valid_to` AS `__old_valid_to`,
      `e`.`_next_seq` AS `__old_next_seq`
    FROM bounds AS k
    INNER JOIN truncates AS r
      ON `r`.`_seq` > `k`.`__first_seq`
    LEFT JOIN existing AS e
      ON (
        `e`.`plan` = `k`.`plan` AND `e`.`currency` = `k`.`currency`
      )
      AND `e`.`_seq` = `r`.`_seq`
      AND `e`.`_op` = 't'
  ), `flagged` AS (
    SELECT
      `plan`,
      `currency`,
      `price`,
      `meta`,
      `renews_at`,
      `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      `__anchor`,
      `__stored`,
      `__candidate`,
      `__old_valid_from`,
      `__old_valid_to`,
      `__old_next_seq`,
      NOT `__candidate`
      OR COALESCE(
        NOT LAG(`_is_deleted`) OVER (PARTITION BY `plan`, `currency` ORDER BY `_seq` ASC NULLS LAST),
        FALSE
      ) AS `__keep`
    FROM chain
  ), `versions` AS (
    SELECT
      `plan`,
      `currency`,
      `price`,
      `meta`,
      `renews_at`,
      `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      `__anchor`,
      `__stored`,
      `__candidate`,
      `__old_valid_from`,
      `__old_valid_to`,
      `__old_next_seq`,
      MAX(`_valid_from`) OVER (
        PARTITION BY `plan`, `currency`
        ORDER BY `_seq` ASC
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
      ) AS `__new_valid_from`,
      CASE
        WHEN LEAD(`_valid_from`) OVER (PARTITION BY `plan`, `currency` ORDER BY `_seq` ASC NULLS LAST) IS NULL
        THEN CAST(NULL AS TIMESTAMP)
        ELSE GREATEST(
          LEAD(`_valid_from`) OVER (PARTITION BY `plan`, `currency` ORDER BY `_seq` ASC NULLS LAST),
          MAX(`_valid_from`) OVER (
            PARTITION BY `plan`, `currency`
            ORDER BY `_seq` ASC
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
          )
        )
      END AS `__new_valid_to`,
      LEAD(`_seq`) OVER (PARTITION BY `plan`, `currency` ORDER BY `_seq` ASC NULLS LAST) AS `__new_next_seq`,
      LAST_VALUE(
        CASE
          WHEN `__anchor` OR `_unavailable` IS NULL OR NOT INSTR(`_unavailable`, ',meta,') > 0
          THEN STRUCT(`meta` AS `v`)
        END
       IGNORE NULLS) OVER (
        PARTITION BY `plan`, `currency`
        ORDER BY `_seq` ASC NULLS LAST
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
      ) AS `__carry_0`
    FROM flagged
    WHERE
      `__keep`
  )
  SELECT
    *
  FROM (
    SELECT
      `plan`,
      `currency`,
      `price`,
      CASE
        WHEN `__anchor` OR `_unavailable` IS NULL OR NOT INSTR(`_unavailable`, ',meta,') > 0
        THEN `meta`
        ELSE `__carry_0`.`v`
      END AS `meta`,
      `renews_at`,
      `__new_valid_from` AS `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      `__new_valid_to`,
      `__new_next_seq`,
      `__stored`,
      TRUE AS `__keep`
    FROM versions
    WHERE
      NOT `__stored`
      OR `__new_next_seq` IS DISTINCT FROM `__old_next_seq`
      OR `__new_valid_to` IS DISTINCT FROM `__old_valid_to`
      OR `__new_valid_from` IS DISTINCT FROM `__old_valid_from`
      OR (
        NOT (
          `__anchor` OR `_unavailable` IS NULL OR NOT INSTR(`_unavailable`, ',meta,') > 0
        )
        AND TO_JSON_STRING(`meta`) IS DISTINCT FROM TO_JSON_STRING(`__carry_0`.`v`)
      )
    UNION ALL
    SELECT
      `plan`,
      `currency`,
      `price`,
      `meta`,
      `renews_at`,
      `_valid_from`,
      `_op`,
      `_is_deleted`,
      `_seq`,
      `_event_id`,
      `_tx_id`,
      `_ingested_at`,
      `_unavailable`,
      `_key_bucket`,
      CAST(NULL AS TIMESTAMP) AS `__new_valid_to`,
      CAST(NULL AS STRING) AS `__new_next_seq`,
      TRUE AS `__stored`,
      FALSE AS `__keep`
    FROM flagged
    WHERE
      NOT `__keep` AND `__stored`
  ) AS `c`
) AS `s`
ON (
  `t`.`plan` = `s`.`plan` AND `t`.`currency` = `s`.`currency`
)
AND `t`.`_seq` = `s`.`_seq`
AND (
  `t`.`_next_seq` IS NULL OR `t`.`_next_seq` > @since_seq
)
WHEN MATCHED AND NOT `s`.`__keep` THEN DELETE
WHEN MATCHED THEN UPDATE SET
  `_valid_from` = `s`.`_valid_from`,
  `_valid_to` = `s`.`__new_valid_to`,
  `_next_seq` = `s`.`__new_next_seq`,
  `_is_current` = `s`.`__new_next_seq` IS NULL,
  `meta` = `s`.`meta`
WHEN NOT MATCHED AND `s`.`__keep` THEN INSERT (
  `plan`,
  `currency`,
  `price`,
  `meta`,
  `renews_at`,
  `_valid_from`,
  `_valid_to`,
  `_is_current`,
  `_is_deleted`,
  `_op`,
  `_seq`,
  `_event_id`,
  `_tx_id`,
  `_ingested_at`,
  `_next_seq`,
  `_unavailable`,
  `_key_bucket`
) VALUES (
  `s`.`plan`,
  `s`.`currency`,
  `s`.`price`,
  `s`.`meta`,
  `s`.`renews_at`,
  `s`.`_valid_from`,
  `s`.`__new_valid_to`,
  `s`.`__new_next_seq` IS NULL,
  `s`.`_is_deleted`,
  `s`.`_op`,
  `s`.`_seq`,
  `s`.`_event_id`,
  `s`.`_tx_id`,
  `s`.`_ingested_at`,
  `s`.`__new_next_seq`,
  `s`.`_unavailable`,
  `s`.`_key_bucket`
);

INSERT INTO `acme-data`.`cdc_state`.`billing_plan_prices__truncates` (
  `_seq`,
  `_valid_from`,
  `_event_id`,
  `_tx_id`,
  `_ingested_at`
)
SELECT
  `n`.`_seq`,
  `n`.`_valid_from`,
  `n`.`_event_id`,
  `n`.`_tx_id`,
  `n`.`_ingested_at`
FROM (
  SELECT
    `_seq`,
    `_valid_from`,
    `_event_id`,
    `_tx_id`,
    `_ingested_at`,
    ROW_NUMBER() OVER (PARTITION BY `_seq` ORDER BY `_ord` NULLS LAST) AS `__rn`
  FROM `acme-data`.`cdc_state`.`billing_plan_prices__stage` AS s
  WHERE
    `_op` = 't'
) AS n
WHERE
  `n`.`__rn` = 1
  AND NOT EXISTS(
    SELECT
      1
    FROM `acme-data`.`cdc_state`.`billing_plan_prices__truncates` AS l
    WHERE
      `l`.`_seq` = `n`.`_seq`
  );
