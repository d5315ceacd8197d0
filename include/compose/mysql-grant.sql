GRANT SELECT ON demo_raw.* TO 'raw'@'%';
