package dev.optsidecar.server.auth;

import dev.optsidecar.server.OptError;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.Locale;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * The tokens of an {@code --auth-tokens} file, re-read when the file changes: the file is read
 * every {@code reloadEvery} and, when its bytes differ from those last loaded, parsed and
 * swapped in whole, so a rotated secret takes effect on the next call without a restart. A
 * changed file that is not valid keeps the tokens loaded before, with a warning naming the fault.
 *
 * <p>Plain Java, for every endpoint that takes a bearer token: {@link #authenticate} turns an
 * {@code authorization} header into a {@link Principal}, and {@link Principal#may} says what it may do.
 */
public final class TokenAuthority implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(TokenAuthority.class.getName());
    /** How often Main's server looks for a changed token file. */
    public static final Duration DEFAULT_RELOAD = Duration.ofSeconds(5);
    private static final String BEARER = "bearer ";

    private final Path file;
    private final ScheduledExecutorService reloader = Executors.newSingleThreadScheduledExecutor(r -> {
        Thread t = new Thread(r, "optsidecar-token-reload");
        t.setDaemon(true);
        return t;
    });
    private volatile AccessRules rules;
    /** The bytes last looked at, loaded or refused: a refused file is reported once, not at every check. */
    private byte[] seen;

    private TokenAuthority(Path file) {
        this.file = file;
    }

    /**
     * Loads the token file and starts watching it.
     *
     * @throws IllegalArgumentException naming the flag, the file and what is wrong (the entry, for a bad one)
     */
    public static TokenAuthority load(Path file, Duration reloadEvery) {
        TokenAuthority authority = new TokenAuthority(file);
        try {
            byte[] bytes = authority.read();
            authority.rules = authority.parse(bytes);
            authority.seen = bytes;
        } catch (RuntimeException e) {
            authority.close();
            throw e;
        }
        long millis = Math.max(1, reloadEvery.toMillis());
        authority.reloader.scheduleWithFixedDelay(authority::reloadIfChanged, millis, millis, TimeUnit.MILLISECONDS);
        return authority;
    }

    public Path file() {
        return file;
    }

    /** The rules in force now. */
    public AccessRules rules() {
        return rules;
    }

    /**
     * Who sent {@code authorization} (the header's value: {@code Bearer <token>}).
     *
     * @throws OptError UNAUTHENTICATED: TOKEN_MISSING when there is no bearer token, TOKEN_UNKNOWN
     *                  when the file has no such token
     */
    public Principal authenticate(String authorization) {
        return authenticate(rules, authorization);
    }

    /** As {@link #authenticate(String)}, against {@code rules}. */
    static Principal authenticate(AccessRules rules, String authorization) {
        String token = bearerToken(authorization);
        Principal p = rules.find(token);
        if (p == null) {
            throw OptError.unauthenticated("authorization: the token is not one of this server's --auth-tokens")
                    .withReason(OptError.Reason.TOKEN_UNKNOWN).withField("");
        }
        return p;
    }

    /** The token of an {@code authorization} header ({@code Bearer} in any case, as RFC 6750 allows). */
    static String bearerToken(String authorization) {
        if (authorization == null || authorization.isBlank()) {
            throw OptError.unauthenticated("authorization: this server requires a token; send 'authorization: Bearer"
                    + " <token>' (the clients send OPTSIDECAR_TOKEN)").withReason(OptError.Reason.TOKEN_MISSING)
                    .withField("");
        }
        String value = authorization.strip();
        String token = value.regionMatches(true, 0, BEARER, 0, BEARER.length())
                ? value.substring(BEARER.length()).strip() : "";
        if (token.isEmpty()) {
            throw OptError.unauthenticated("authorization: not a bearer token; send 'authorization: Bearer <token>'")
                    .withReason(OptError.Reason.TOKEN_MISSING).withField("");
        }
        return token;
    }

    private byte[] read() {
        if (!Files.isRegularFile(file) || !Files.isReadable(file)) {
            throw new IllegalArgumentException("--auth-tokens " + file + ": "
                    + (Files.exists(file) ? "not a readable file" : "no such file"));
        }
        try {
            return Files.readAllBytes(file);
        } catch (IOException e) {
            throw new IllegalArgumentException("--auth-tokens " + file + ": cannot be read (" + e.getMessage() + ")");
        }
    }

    private AccessRules parse(byte[] bytes) {
        try {
            return AccessRules.parse(bytes);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--auth-tokens " + file + ": " + e.getMessage(), e);
        }
    }

    private void reloadIfChanged() {
        byte[] bytes;
        try {
            bytes = read();
        } catch (IllegalArgumentException e) {
            if (seen != null) { // missing for a moment (a file replaced); report it once
                seen = null;
                LOG.warning(() -> "tokens: keeping the " + rules.size() + " tokens loaded before; " + e.getMessage());
            }
            return;
        }
        if (Arrays.equals(bytes, seen)) {
            return;
        }
        seen = bytes;
        try {
            AccessRules loaded = parse(bytes);
            rules = loaded;
            LOG.info(() -> String.format(Locale.ROOT, "tokens: reloaded %s (%d tokens)", file, loaded.size()));
        } catch (RuntimeException e) {
            // An exception escaping would cancel the periodic check: keep the old rules and look again.
            LOG.warning(() -> "tokens: keeping the " + rules.size() + " tokens loaded before; " + e.getMessage());
        }
    }

    /** Stops watching the file. */
    @Override
    public void close() {
        reloader.shutdownNow();
    }
}
