# Warden tier T1 (operator): Vault/OpenBao ACL policy, mirrors `secrets` of T1 in policies/tiers.toml.
# Written by `warden vault setup` as policy `warden-t1-operator` and attached to every T1 agent's
# AppRole role. Roles get `token_no_default_policy`, so this is all the token may do.
# `secret/` is the KV v2 mount; setup rewrites it when another mount is configured.
# T1 reads no secrets.

# Every Warden token may look itself up, renew itself (long runs) and revoke itself (run end).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}
