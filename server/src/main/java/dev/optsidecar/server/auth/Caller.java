package dev.optsidecar.server.auth;

import io.grpc.Context;

/** The principal of the call being served, for the services that filter what they list. */
public final class Caller {
    /** Set by {@link TokenCheck}; absent on a server without --auth-tokens. */
    static final Context.Key<Principal> PRINCIPAL = Context.key("optsidecar-principal");

    private Caller() {}

    /** Whether the caller may see {@code model} (read it); always on a server without tokens. */
    public static boolean maySee(String model) {
        Principal p = PRINCIPAL.get();
        return p == null || p.may(Role.READER, model);
    }
}
