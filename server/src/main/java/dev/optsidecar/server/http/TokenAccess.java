package dev.optsidecar.server.http;

import dev.optsidecar.server.OptError;
import dev.optsidecar.server.auth.Principal;
import dev.optsidecar.server.auth.Role;
import dev.optsidecar.server.auth.TokenAuthority;

/**
 * The API's tokens on the HTTP port: a data route needs the role reader on the model it reads.
 * Server-wide data (/metrics, whose series name every model) needs a token that may read every
 * model (its globs include {@code *}); the model list shows only the models the token may read.
 */
public final class TokenAccess implements HttpAccess {
    private final TokenAuthority tokens;

    public TokenAccess(TokenAuthority tokens) {
        this.tokens = tokens;
    }

    @Override
    public Decision check(String authorization, String role, String model) {
        Principal caller;
        try {
            caller = tokens.authenticate(authorization);
        } catch (OptError e) {
            return Decision.UNAUTHENTICATED;
        }
        Role needed = READER.equals(role) ? Role.READER : Role.ADMIN; // a role this check does not know: the most
        if (model == null) {
            return caller.role().includes(needed) && caller.models().contains("*") ? Decision.ALLOW
                    : Decision.FORBIDDEN;
        }
        return caller.may(needed, model) ? Decision.ALLOW : Decision.FORBIDDEN;
    }

    @Override
    public boolean mayList(String authorization, String model) {
        try {
            return tokens.authenticate(authorization).may(Role.READER, model);
        } catch (OptError e) {
            return false;
        }
    }
}
