package dev.optsidecar.server.engine;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Locale;

/**
 * Loads an engine's native library, shipped in the jar under {@value #DIRECTORY} (the build puts
 * it there), from a temporary copy: a library inside a jar cannot be loaded in place.
 */
public final class NativeLibrary {
    /** Where in the jar the libraries are: they are built for Linux x86-64 only. */
    public static final String DIRECTORY = "/native/linux-x86_64/";

    private NativeLibrary() {}

    /**
     * Loads {@code file} (e.g. {@code liboptsidecar_cpu.so}) from the jar; returns null when it
     * is loaded, else why it is not: not this platform, not in this build ({@code whyAbsent}),
     * not loadable here.
     */
    public static String load(String file, String what, String whyAbsent) {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "");
        if (!os.contains("linux") || !(arch.equals("amd64") || arch.equals("x86_64"))) {
            return "the " + what + " library is built for Linux x86-64 only, not " + os + " " + arch;
        }
        try (InputStream in = NativeLibrary.class.getResourceAsStream(DIRECTORY + file)) {
            if (in == null) {
                return "this build has no " + what + " library (" + whyAbsent + ")";
            }
            Path copy = Files.createTempFile(file.replace(".so", "-"), ".so");
            copy.toFile().deleteOnExit();
            Files.copy(in, copy, StandardCopyOption.REPLACE_EXISTING);
            System.load(copy.toString());
            return null;
        } catch (IOException | UnsatisfiedLinkError e) {
            return "the " + what + " library could not be loaded: " + e.getMessage();
        }
    }
}
