package dev.optsidecar.server.auth;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;

/** Token files for tests: each token's entry holds its SHA-256 digest, as `sha256sum` prints it. */
public final class TokenFiles {
    private final List<String> entries = new ArrayList<>();

    public static TokenFiles of() {
        return new TokenFiles();
    }

    /** Adds the token {@code token}, named {@code name}, with {@code role} on {@code models}. */
    public TokenFiles token(String name, String token, String role, String... models) {
        StringBuilder globs = new StringBuilder();
        for (String m : models) {
            globs.append(globs.isEmpty() ? "" : ", ").append('"').append(m).append('"');
        }
        entries.add(String.format("{\"name\": \"%s\", \"sha256\": \"%s\", \"role\": \"%s\", \"models\": [%s]}",
                name, sha256Hex(token), role, globs));
        return this;
    }

    public String json() {
        return "{\"tokens\": [\n  " + String.join(",\n  ", entries) + "\n]}\n";
    }

    /** Writes the file as a mounted secret changes: a new file moved over the old one. */
    public Path writeTo(Path file) throws IOException {
        Path staged = file.resolveSibling(file.getFileName() + ".new");
        Files.writeString(staged, json());
        return Files.move(staged, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    public static String sha256Hex(String token) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256")
                    .digest(token.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }
}
