-- A random identity for this registry. `broker sync` removes broker accounts the registry does
-- not know, so it first checks that the broker's accounts belong to this registry (a marker role
-- names it) and refuses to touch a broker bound to another database. Survives dump/restore.
CREATE TABLE registry_identity (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    singleton   boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO registry_identity DEFAULT VALUES;
