package dev.optsidecar.server.snapshot;

import java.net.URLDecoder;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.Locale;

/**
 * Model names to directory names and back. A model name is any non-empty string of valid UTF-16;
 * its directory name is its UTF-8 URL encoding ({@link URLEncoder}: letters, digits and
 * {@code _ -} stay, a space becomes {@code +}, every other byte {@code %XX}) with {@code . *} also
 * escaped, a leading {@code -} escaped, and the first letter of a name that would read as
 * {@code exports} (the export directory) escaped. The result never starts with a dot, so it
 * cannot be {@code .} or {@code ..} or clash with the store's own dot-names, and it decodes back
 * to the model name. A name whose encoding exceeds {@value #MAX_ENCODED} characters is cut and
 * suffixed with {@code ~} and 32 hex digits of its SHA-256; {@code ~} never occurs in an encoding,
 * so such names are still unique, but they only decode through their manifests.
 */
final class ModelNames {
    static final int MAX_ENCODED = 200;
    static final String EXPORTS = "exports";
    private static final int CUT = 160;

    private ModelNames() {}

    static String encode(String model) {
        if (model == null || model.isEmpty()) {
            throw new IllegalArgumentException("model name must not be empty");
        }
        if (!StandardCharsets.UTF_8.newEncoder().canEncode(model)) {
            throw new IllegalArgumentException("model name is not valid Unicode (unpaired surrogate)");
        }
        String e = URLEncoder.encode(model, StandardCharsets.UTF_8).replace(".", "%2E").replace("*", "%2A");
        if (e.startsWith("-")) {
            e = "%2D" + e.substring(1);
        }
        if (e.equalsIgnoreCase(EXPORTS)) {
            e = String.format(Locale.ROOT, "%%%02X", (int) e.charAt(0)) + e.substring(1);
        }
        if (e.length() > MAX_ENCODED) {
            int cut = CUT;
            // Do not split a %XX escape.
            if (e.charAt(cut - 1) == '%') {
                cut -= 1;
            } else if (e.charAt(cut - 2) == '%') {
                cut -= 2;
            }
            e = e.substring(0, cut) + "~" + sha256(model).substring(0, 32);
        }
        return e;
    }

    /** The model name a directory name encodes, or null if it is not the encoding of any name. */
    static String decode(String dirName) {
        if (dirName.isEmpty() || dirName.indexOf('~') >= 0) {
            return null;
        }
        String name;
        try {
            name = URLDecoder.decode(dirName, StandardCharsets.UTF_8);
        } catch (IllegalArgumentException e) {
            return null;
        }
        // Only the canonical encoding counts: that rejects stray directories and malformed UTF-8.
        if (name.isEmpty() || !StandardCharsets.UTF_8.newEncoder().canEncode(name)) {
            return null;
        }
        return encode(name).equals(dirName) ? name : null;
    }

    private static String sha256(String s) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
