package dev.optsidecar.server.shm;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.nio.charset.StandardCharsets;

/**
 * A segment's name as a client sends it: a plain file name directly in --shm-dir. Anything that
 * could reach another directory (a separator, "..") or is not a file name is refused before the
 * file system is touched.
 */
final class SegmentName {
    /** The longest file name Linux allows. */
    static final int MAX_BYTES = 255;

    private SegmentName() {}

    /** Returns {@code name} if it is a plain file name, else INVALID_ARGUMENT naming {@code field}. */
    static String check(String name, String field) {
        String why = null;
        if (name.isEmpty()) {
            why = "is empty";
        } else if (name.indexOf('/') >= 0 || name.indexOf('\\') >= 0) {
            why = "has a directory separator; give a file name directly in the server's --shm-dir";
        } else if (name.contains("..") || name.equals(".")) {
            why = "may not contain '..' or be '.'";
        } else if (name.indexOf('\0') >= 0) {
            why = "has a NUL character";
        } else if (name.getBytes(StandardCharsets.UTF_8).length > MAX_BYTES) {
            why = "is longer than " + MAX_BYTES + " bytes";
        }
        if (why != null) {
            throw OptError.invalid("%s: segment name '%s' %s", field, Echo.of(name), why).withField(field);
        }
        return name;
    }
}
