-- The compose stack's export account: SELECT on the raw schema only (no writes, no FILE, no *.*).
-- The export also refuses non-SELECT SQL and runs read-only; this grant is the layer that holds regardless.
GRANT SELECT ON demo_raw.* TO 'raw'@'%';
