ALTER TABLE "billing_plan_prices"
ADD COLUMN IF NOT EXISTS "note" TEXT;

ALTER TABLE "billing_plan_prices"
ALTER COLUMN "price" SET DATA TYPE DECIMAL(12, 2);
