package dev.optsidecar.server.auth;

import dev.optsidecar.server.OptError;

import java.util.List;

/**
 * Who a call comes from: the token's name in the token file, its role, and the models it may use.
 * Independent of any transport, so that every endpoint checks access the same way.
 */
public final class Principal {
    private final String name;
    private final Role role;
    private final ModelGlobs models;

    Principal(String name, Role role, ModelGlobs models) {
        this.name = name;
        this.role = role;
        this.models = models;
    }

    /** The token's name in the file (never the token itself). */
    public String name() {
        return name;
    }

    public Role role() {
        return role;
    }

    /** The token's model globs, as the file lists them. */
    public List<String> models() {
        return models.globs();
    }

    /** Whether this token may do what {@code needed} may on {@code model}. */
    public boolean may(Role needed, String model) {
        return role.includes(needed) && models.matches(model);
    }

    /**
     * Throws PERMISSION_DENIED (reason ACCESS_DENIED) unless this token may do what {@code needed}
     * may on {@code model}; the message and metadata name the model, the role needed and what the
     * token has. {@code what} names the call (e.g. Step), {@code field} where the model is named.
     */
    public void require(Role needed, String model, String what, String field) {
        if (may(needed, model)) {
            return;
        }
        String has = role.includes(needed)
                ? "has role " + role.label() + " only on models matching " + models
                : "has role " + role.label();
        throw OptError.permissionDenied("%s%s on model '%s' needs role %s; token '%s' %s",
                        field.isEmpty() ? "" : field + ": ", what, model, needed.label(), name, has)
                .withField(field).with("model", model).with("required_role", needed.label())
                .with("role", role.label()).with("token", name);
    }

    @Override
    public String toString() {
        return "token '" + name + "' (" + role.label() + " on " + models + ")";
    }
}
