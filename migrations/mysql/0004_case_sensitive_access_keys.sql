-- Access keys compare case-sensitively: under the default collation "Secret"
-- and "secret" were one key, so a guess at another room's key needed no
-- letter case, and two owners could not pick keys differing only in case.
-- No two stored keys can collide under the binary collation that did not
-- collide under a case-insensitive one: the unique index stays valid.
ALTER TABLE rooms MODIFY access_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
