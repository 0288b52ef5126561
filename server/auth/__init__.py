"""API keys, per-key quotas and the state replicas share.

- `keys`: the key format, its hash and public id, and a key's record;
- `store`: the `KeyStore` interface, with two implementations: the embedded
  SQLite file of a single machine (`sqlite_store`) and Redis for a fleet
  (`redis_store`), chosen by `build` from the settings;
- `access`: what the server does with a store: `Authenticator` resolves an
  `Authorization` header into a domain `Caller` (and applies the key's rate
  limit), `KeyLedger` is the domain's `UsageLedger` on the store;
- `admin`: what the `image-service keys` commands do.

Nothing here imports grpc: the interceptor in `server.rpc.auth` calls
`Authenticator.authenticate` and the orchestrator calls the ledger.
"""
