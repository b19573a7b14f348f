SELECT
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
  `_unavailable`
FROM `acme-data`.`cdc_state`.`billing_plan_prices`
WHERE
  (
    `_valid_from` <= CAST('2026-05-01T12:00:00+00:00' AS TIMESTAMP)
    AND (
      `_valid_to` IS NULL
      OR `_valid_to` > CAST('2026-05-01T12:00:00+00:00' AS TIMESTAMP)
    )
  )
  AND NOT `_is_deleted`
ORDER BY
  `plan` NULLS LAST,
  `currency` NULLS LAST;

SELECT
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
  `_unavailable`
FROM `acme-data`.`cdc_state`.`billing_plan_prices`
WHERE
  (
    `_seq` <= '0000000000000010/0000000000000020'
    AND (
      `_next_seq` IS NULL OR `_next_seq` > '0000000000000010/0000000000000020'
    )
  )
  AND NOT `_is_deleted`
ORDER BY
  `plan` NULLS LAST,
  `currency` NULLS LAST;
