"""Course tooling: what runs and presents the lessons, not what they teach.

- :mod:`~tlcourse.courseware.course`       a lesson's setup line, and running every notebook
- :mod:`~tlcourse.courseware.results`      the numbers a notebook records, and its profiles
- :mod:`~tlcourse.courseware.slides`       the notebooks as offline reveal.js decks
- :mod:`~tlcourse.courseware.exercises`    checking a learner's exercise answers
- :mod:`~tlcourse.courseware.environment`  the environment report for a bug report
"""
