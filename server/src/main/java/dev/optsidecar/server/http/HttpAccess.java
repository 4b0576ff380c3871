package dev.optsidecar.server.http;

/**
 * Who may read what over HTTP: one check per request, made by {@link HttpApi} before any data is
 * served. The server's static dashboard assets hold no data and are not checked.
 */
@FunctionalInterface
public interface HttpAccess {
    /** The role every data route needs: reading metrics, models and their figures. */
    String READER = "reader";

    /** What the check decided: serve, 401 (no or unknown credentials) or 403 (known, not allowed). */
    enum Decision { ALLOW, UNAUTHENTICATED, FORBIDDEN }

    /**
     * @param authorization the request's Authorization header, or null without one
     * @param role          the role the route needs ({@link #READER})
     * @param model         the model the route reads, or null for server-wide data (/metrics, the model list)
     */
    Decision check(String authorization, String role, String model);

    /** Whether the model list (/api/models) shows {@code model} to this caller. */
    default boolean mayList(String authorization, String model) {
        return true;
    }

    /** Everyone may read: the server has no access rules. */
    HttpAccess ALLOW_ALL = (authorization, role, model) -> Decision.ALLOW;
}
