ALTER TABLE `acme-data`.`cdc_state`.`billing_plan_prices`
ADD COLUMN IF NOT EXISTS `note` STRING;

ALTER TABLE `acme-data`.`cdc_state`.`billing_plan_prices`
ALTER COLUMN `price` SET DATA TYPE NUMERIC(12, 2);
